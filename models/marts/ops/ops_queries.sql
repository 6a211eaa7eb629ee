-- One row per request the retrieval service logged: who asked what, the outcome, the latency, the
-- index and prompt version that served it, and the feedback it got.

with

queries as (

    select * from {{ ref('stg_serve__queries') }}

),

feedback as (

    select * from {{ ref('stg_serve__feedback') }}

),

prompt_versions as (

    select * from {{ ref('prompt_versions') }}

),

feedback_per_query as (

    select
        query_id,
        count(*) as feedback_given,
        count(*) filter (where feedback_label = 'relevant') as relevant_labels,
        count(*) filter (where feedback_label = 'not_relevant') as not_relevant_labels,
        count(*) filter (where feedback_label = 'click') as clicks
    from feedback
    group by query_id

),

final as (

    select
        queries.query_id,
        queries.logged_at,
        date_trunc('hour', queries.logged_at) as request_hour,
        queries.caller_name,
        queries.caller_access_level,
        queries.route,
        -- a request refused before its mode was read has none
        coalesce(queries.search_mode, 'unknown') as search_mode,
        queries.top_k,
        queries.query_text,
        {{ normalize_question('queries.query_text') }} as question_key,
        queries.filters_json,
        queries.per_document,
        queries.http_status,
        case
            when queries.http_status < 400 then 'ok'
            when queries.http_status < 500 then 'refused'
            else 'error'
        end as outcome,
        queries.error_message,
        queries.index_table,
        queries.index_version,
        queries.prompt_name,
        queries.prompt_version,
        prompt_versions.prompt_labels,
        prompt_versions.created_on as prompt_created_on,
        queries.prompt_version is not null and prompt_versions.prompt_version is null as is_unknown_prompt_version,
        coalesce(json_array_length(queries.results_json), 0) as results_returned,
        queries.context_tokens,
        queries.embed_ms,
        queries.search_ms,
        queries.total_ms,
        coalesce(feedback_per_query.feedback_given, 0) as feedback_given,
        coalesce(feedback_per_query.relevant_labels, 0) as relevant_labels,
        coalesce(feedback_per_query.not_relevant_labels, 0) as not_relevant_labels,
        coalesce(feedback_per_query.clicks, 0) as clicks
    from queries
    left join prompt_versions
        on
            queries.prompt_name = prompt_versions.prompt_name
            and queries.prompt_version = prompt_versions.prompt_version
    left join feedback_per_query
        on queries.query_id = feedback_per_query.query_id

)

select * from final
