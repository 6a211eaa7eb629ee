-- One row: how fresh the published index is against document_chunks, and whether it meets its SLA.

with

index_chunks as (

    select * from {{ ref('ops_index_chunks') }}

),

summary as (

    select
        count(*) filter (where index_state <> 'deleted_pending') as chunks_total,
        count(*) filter (where index_state = 'current') as chunks_current,
        count(*) filter (where index_state = 'stale') as chunks_stale,
        count(*) filter (where index_state = 'not_indexed') as chunks_not_indexed,
        count(*) filter (where index_state = 'deleted_pending') as chunks_deleted_pending,
        count(*) filter (where is_pending) as chunks_pending,
        quantile_cont(source_to_index_hours, 0.5) as lag_p50_hours,
        quantile_cont(source_to_index_hours, 0.95) as lag_p95_hours,
        max(source_to_index_hours) as lag_max_hours,
        max(pending_hours) as oldest_pending_hours,
        max(index_table) as index_table,
        max(index_version) as index_version,
        max(indexed_at) as last_indexed_at
    from index_chunks

),

final as (

    select
        {{ dbt.current_timestamp() }} as measured_at,
        summary.*,
        {{ var('ops')['index_freshness_sla_hours'] }} as sla_hours,
        coalesce(summary.oldest_pending_hours > {{ var('ops')['index_freshness_sla_hours'] }}, false) as is_sla_breached
    from summary

)

select * from final
