-- Edit to searchable, per hour and runner: how long each landing-file change took from its edit to the
-- index version that serves it (rp watch and make pipeline side by side), against vars.ops.freshness_sla_seconds.

with

events as (

    select * from {{ ref('stg_ops__freshness_events') }}

),

searchable as (

    select
        runner,
        date_trunc('hour', published_at) as published_hour,
        epoch(published_at) - epoch(changed_at) as edit_to_searchable_seconds,
        epoch(published_at) - epoch(seen_at) as seen_to_searchable_seconds,
        epoch(ingested_at) - epoch(changed_at) as edit_to_ingested_seconds
    from events
    where
        outcome in ('published', 'deleted')
        and published_at is not null
        -- a bulk first load is not an edit
        and not coalesce(is_first_load, false)

),

hourly as (

    select
        published_hour,
        runner,
        count(*) as changes_searchable,
        quantile_cont(edit_to_searchable_seconds, 0.5) as edit_to_searchable_p50_seconds,
        quantile_cont(edit_to_searchable_seconds, 0.95) as edit_to_searchable_p95_seconds,
        max(edit_to_searchable_seconds) as edit_to_searchable_max_seconds,
        quantile_cont(seen_to_searchable_seconds, 0.95) as seen_to_searchable_p95_seconds,
        quantile_cont(edit_to_ingested_seconds, 0.95) as edit_to_ingested_p95_seconds
    from searchable
    group by published_hour, runner

),

final as (

    select
        hourly.*,
        {{ var('ops')['freshness_sla_seconds'] }} as sla_seconds,
        hourly.edit_to_searchable_p95_seconds > {{ var('ops')['freshness_sla_seconds'] }} as is_over_sla,
        row_number() over (partition by hourly.runner order by hourly.published_hour desc) = 1 as is_latest
    from hourly

)

select * from final
