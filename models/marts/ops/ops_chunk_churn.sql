-- What each embedding run found changed, chunk by chunk, and what it left pending.

with

embed_runs as (

    select * from {{ ref('stg_ops__embed_runs') }}

),

final as (

    select
        embed_run_id,
        run_status,
        started_at,
        chunks_total,
        chunks_new,
        chunks_text_changed,
        chunks_metadata_changed,
        chunks_deleted,
        chunks_unchanged,
        chunks_new + chunks_text_changed + chunks_metadata_changed + chunks_deleted as chunks_changed,
        chunks_changed / nullif(chunks_total, 0) as churn_rate,
        -- a run that did not finish left its whole plan for the next one
        case when run_status = 'success' then 0 else chunks_changed end as chunks_pending,
        index_version
    from embed_runs

)

select * from final
