-- Tokens, reuse and estimated cost of each embedding run, priced from the seeded rate card.

with

embed_runs as (

    select * from {{ ref('stg_ops__embed_runs') }}

),

rates as (

    select * from {{ ref('embedding_cost_rates') }}

),

priced as (

    select
        embed_runs.*,
        rates.price_per_million_tokens,
        rates.model_name as rate_model_name
    from embed_runs
    left join rates
        on
            (embed_runs.model_name = rates.model_name or rates.model_name = '*')
            and (embed_runs.model_backend = rates.backend or rates.backend = '*')
            and embed_runs.started_at >= rates.valid_from
            and (rates.valid_to is null or embed_runs.started_at < rates.valid_to)
    -- the most specific rate wins: an exact model and backend over a wildcard
    qualify row_number() over (
        partition by embed_runs.embed_run_id
        order by (rates.model_name = '*'), (rates.backend = '*'), rates.valid_from desc
    ) = 1

),

final as (

    select
        embed_run_id,
        run_status,
        started_at,
        date_trunc('week', started_at) as cost_week,
        model_name,
        model_backend,
        texts_embedded,
        tokens_embedded,
        chunks_reused,
        tokens_reused,
        cache_hit_rate,
        price_per_million_tokens,
        rate_model_name,
        tokens_embedded * price_per_million_tokens / 1e6 as estimated_cost_usd,
        -- what the reused vectors would have cost to embed again
        tokens_reused * price_per_million_tokens / 1e6 as avoided_cost_usd,
        total_seconds
    from priced

)

select * from final
