-- One row: the changes not yet searchable (pending, blocked by a test, failed), the oldest of them, and
-- whether freshness meets vars.ops.freshness_sla_seconds.

with

events as (

    select * from {{ ref('stg_ops__freshness_events') }}

),

hourly as (

    select * from {{ ref('ops_freshness') }}

),

unsearchable as (

    select
        *,
        epoch({{ dbt.current_timestamp() }}) - epoch(changed_at) as waiting_seconds
    from events
    where outcome in ('pending', 'blocked', 'failed')

),

backlog as (

    select
        count(*) as changes_not_searchable,
        count(*) filter (where outcome = 'pending') as changes_pending,
        count(*) filter (where outcome = 'blocked') as changes_blocked,
        count(*) filter (where outcome = 'failed') as changes_failed,
        max(waiting_seconds) as oldest_waiting_seconds,
        arg_max(landing_path, waiting_seconds) as oldest_landing_path,
        arg_max(outcome, waiting_seconds) as oldest_outcome
    from unsearchable

),

latest as (

    -- the latest hour of the last day in which changes became searchable (the slower runner, if both ran)
    select
        published_hour as latest_hour,
        max(edit_to_searchable_p95_seconds) as latest_hour_p95_seconds,
        max(edit_to_searchable_max_seconds) as latest_hour_max_seconds
    from hourly
    where
        published_hour = (select max(h.published_hour) from hourly as h)
        and published_hour >= {{ dbt.dateadd('hour', -24, dbt.current_timestamp()) }}
    group by published_hour

),

final as (

    select
        {{ dbt.current_timestamp() }} as measured_at,
        backlog.*,
        latest.*,
        {{ var('ops')['freshness_sla_seconds'] }} as sla_seconds,
        coalesce(backlog.oldest_waiting_seconds > {{ var('ops')['freshness_sla_seconds'] }}, false)
            as is_sla_breached,
        coalesce(latest.latest_hour_p95_seconds > {{ var('ops')['freshness_sla_seconds'] }}, false)
            as is_latest_hour_over_sla
    from backlog
    left join latest on true

)

select * from final
