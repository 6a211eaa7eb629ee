-- Requests, outcomes and latency percentiles of the retrieval service per hour and search mode.
-- Latency is measured over the requests that succeeded: a refused request (401, 422, 429) returns
-- before any search and would only pull the percentiles down.

with

queries as (

    select * from {{ ref('ops_queries') }}

),

per_hour as (

    select
        request_hour,
        search_mode,
        count(*) as requests,
        count(*) filter (where outcome = 'ok') as ok_requests,
        count(*) filter (where outcome = 'refused') as refused_requests,
        count(*) filter (where outcome = 'error') as error_requests,
        count(*) filter (where route = '/v1/search') as search_requests,
        count(*) filter (where route = '/v1/context') as context_requests,
        count(distinct caller_name) as callers,
        quantile_cont(total_ms, 0.5) filter (where outcome = 'ok') as latency_p50_ms,
        quantile_cont(total_ms, 0.95) filter (where outcome = 'ok') as latency_p95_ms,
        quantile_cont(total_ms, 0.99) filter (where outcome = 'ok') as latency_p99_ms,
        max(total_ms) filter (where outcome = 'ok') as latency_max_ms,
        quantile_cont(embed_ms, 0.5) filter (where outcome = 'ok') as embed_p50_ms,
        quantile_cont(search_ms, 0.5) filter (where outcome = 'ok') as search_p50_ms,
        max(index_version) as latest_index_version
    from queries
    group by request_hour, search_mode

),

final as (

    select
        *,
        error_requests / requests as error_rate,
        refused_requests / requests as refused_rate,
        -- requests per second averaged over the hour
        requests / 3600.0 as requests_per_second
    from per_hour

)

select * from final
