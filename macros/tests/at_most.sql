{#
    Fails on every row where the column is above a limit kept in another model: the
    single value of `limit_column` in `limit_model` (a settings table, say). With
    `measure: length`, the column's length is compared instead of its value.
#}
{% test at_most(model, column_name, limit_model, limit_column, measure=none) %}

{%- if measure not in (none, 'length') -%}
    {{ exceptions.raise_compiler_error("at_most: measure must be length or left out, got " ~ measure) }}
{%- endif -%}
{%- set measured = dbt.length(column_name) if measure == 'length' else column_name -%}

with limits as (

    select max({{ limit_column }}) as limit_value
    from {{ limit_model }}

)

select
    tested.*,
    limits.limit_value
from {{ model }} as tested
cross join limits
where {{ measured }} > limits.limit_value
   or limits.limit_value is null

{% endtest %}
