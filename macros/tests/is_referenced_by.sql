{#
    The reverse of `relationships`: fails on every key that no row of another model
    refers to (a document with no chunks, say).
#}
{% test is_referenced_by(model, column_name, to, field) %}

select parent.{{ column_name }}
from {{ model }} as parent
left join {{ to }} as child
    on parent.{{ column_name }} = child.{{ field }}
where child.{{ field }} is null

{% endtest %}
