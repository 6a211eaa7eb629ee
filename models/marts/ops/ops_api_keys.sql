-- The service's API keys (names, levels, limits; never a key or its hash) and how much each is used.

with

api_keys as (

    select * from {{ ref('stg_serve__api_keys') }}

),

queries as (

    select * from {{ ref('stg_serve__queries') }}

),

usage as (

    -- a request counts for the key of its caller's name that was valid when it arrived
    select
        api_keys.key_name,
        api_keys.created_at,
        count(*) as requests,
        count(*) filter (where queries.http_status between 400 and 499) as refused_requests,
        count(*) filter (where queries.http_status >= 500) as error_requests,
        cast(sum(queries.context_tokens) as bigint) as context_tokens,
        max(queries.logged_at) as last_request_at
    from api_keys
    inner join queries
        on
            api_keys.key_name = queries.caller_name
            and api_keys.created_at <= queries.logged_at
            and (api_keys.revoked_at is null or api_keys.revoked_at > queries.logged_at)
    group by api_keys.key_name, api_keys.created_at

),

final as (

    select
        api_keys.key_name,
        api_keys.access_level,
        api_keys.rate_per_second,
        api_keys.daily_tokens,
        api_keys.created_at,
        api_keys.revoked_at,
        api_keys.revoked_at is null as is_active,
        coalesce(usage.requests, 0) as requests,
        coalesce(usage.refused_requests, 0) as refused_requests,
        coalesce(usage.error_requests, 0) as error_requests,
        coalesce(usage.context_tokens, 0) as context_tokens,
        usage.last_request_at
    from api_keys
    left join usage
        on
            api_keys.key_name = usage.key_name
            and api_keys.created_at = usage.created_at

)

select * from final
