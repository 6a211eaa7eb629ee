{#
    Fails when the newest value of `field` is older than `interval` `datepart`s:
    the model has stopped receiving new data even though it still builds.
#}
{% test recency(model, field, datepart, interval) %}

with newest as (

    select max({{ field }}) as most_recent
    from {{ model }}

)

select
    most_recent,
    {{ dbt.dateadd(datepart, -1 * interval, dbt.current_timestamp()) }} as threshold
from newest
where most_recent is null
   or most_recent < {{ dbt.dateadd(datepart, -1 * interval, dbt.current_timestamp()) }}

{% endtest %}
