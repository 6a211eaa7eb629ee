{#
    Fails when a model's row count moved more than the allowed percentage since its
    previous build (as recorded by the on-run-end hook in audit.model_row_counts).
    A silent 40% drop in customers is a broken export, not a business trend.
    Passes on a model's first build, when there is nothing to compare with.
#}
{% test row_count_change(model, max_drop_pct=20, max_growth_pct=none) %}

with current_count as (

    select count(*) as row_count
    from {{ model }}

),

previous_count as (

    select row_count
    from audit.model_row_counts
    where relation_name = '{{ model | replace("'", "''") }}'
    order by recorded_at desc
    limit 1

),

compared as (

    select
        previous_count.row_count as previous_row_count,
        current_count.row_count as current_row_count,
        round(100.0 * (current_count.row_count - previous_count.row_count)
            / nullif(previous_count.row_count, 0), 2) as change_pct
    from current_count
    cross join previous_count

)

select *
from compared
where change_pct < -1 * {{ max_drop_pct }}
{% if max_growth_pct is not none %}
   or change_pct > {{ max_growth_pct }}
{% endif %}

{% endtest %}
