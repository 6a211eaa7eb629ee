with

source as (

    {{ ops_source('embed_runs') }}

),

renamed as (

    select
        run_id as embed_run_id,
        status as run_status,
        forced,
        published,
        model_name,
        model_backend,
        model_fingerprint,
        index_table,
        index_version,
        chunks_total,
        chunks_new,
        chunks_text_changed,
        chunks_metadata_changed,
        chunks_unchanged,
        chunks_deleted,
        texts_embedded,
        tokens_embedded,
        chunks_reused,
        tokens_reused,
        cache_hit_rate,
        estimated_cost_usd as ledger_cost_usd,
        token_budget,
        total_seconds,
        embed_seconds,
        error,
        started_at,
        finished_at
    from source

)

select * from renamed
