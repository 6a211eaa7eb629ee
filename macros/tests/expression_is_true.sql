{#
    Fails on every row where the SQL expression is not true. With a column, the
    expression is appended to it: `expression: ">= 0"` on column `amount`.
#}
{% test expression_is_true(model, expression, column_name=none) %}

select *
from {{ model }}
where not (
    {% if column_name is not none %}{{ column_name }} {% endif %}{{ expression }}
)

{% endtest %}
