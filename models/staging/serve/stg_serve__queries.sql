with

source as (

    {{ serve_source('query_log') }}

),

renamed as (

    select
        -- ids
        query_id,
        caller as caller_name,

        -- the request
        route,
        mode as search_mode,
        k as top_k,
        query as query_text,
        filters as filters_json,
        per_document,
        access_level as caller_access_level,
        prompt_name,
        prompt_version,

        -- the answer
        status as http_status,
        error as error_message,
        index_table,
        index_version,
        results as results_json,
        context_tokens,

        -- latency, milliseconds
        embed_ms,
        search_ms,
        total_ms,

        -- timestamps
        logged_at

    from source

)

select * from renamed
