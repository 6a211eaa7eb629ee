{#
    Fails on every row where the column is above a limit kept in another model: the
    single value of `limit_column` in `limit_model` (a settings table, say).
#}
{% test at_most(model, column_name, limit_model, limit_column) %}

with limits as (

    select max({{ limit_column }}) as limit_value
    from {{ limit_model }}

)

select
    tested.*,
    limits.limit_value
from {{ model }} as tested
cross join limits
where {{ column_name }} > limits.limit_value
   or limits.limit_value is null

{% endtest %}
