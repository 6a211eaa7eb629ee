{#
    Fails (usually as a warning) when the model has any rows: for tables that should
    stay empty, such as the ingest quarantine.
#}
{% test row_count_is_zero(model) %}

select *
from {{ model }}

{% endtest %}
