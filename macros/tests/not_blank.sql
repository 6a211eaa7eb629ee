{#
    Fails on every row whose text is null, empty or only whitespace (newlines and tabs
    included, which trim() alone would miss).
#}
{% test not_blank(model, column_name) %}

select *
from {{ model }}
where {{ column_name }} is null
   or not {{ matches_pattern(column_name, '\\S') }}

{% endtest %}
