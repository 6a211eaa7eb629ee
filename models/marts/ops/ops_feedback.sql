-- Every piece of feedback the service accepted, with the request it is about: the question, the
-- mode, the index and prompt version that served it, and where the labelled document ranked.

with

feedback as (

    select * from {{ ref('stg_serve__feedback') }}

),

queries as (

    select * from {{ ref('stg_serve__queries') }}

),

returned as (

    -- what each request returned, a row per result
    select
        query_id,
        unnest(from_json(results_json, '[{"rank": "integer", "doc_id": "varchar"}]')) as result
    from queries

),

doc_ranks as (

    select
        query_id,
        result['doc_id'] as doc_id,
        min(result['rank']) as doc_rank
    from returned
    group by all

),

final as (

    select
        feedback.feedback_id,
        feedback.given_at,
        date_trunc('day', feedback.given_at) as feedback_day,
        feedback.caller_name,
        feedback.feedback_label,
        feedback.doc_id,
        feedback.chunk_id,
        feedback.comment_text,
        feedback.query_id,
        queries.query_text,
        queries.route,
        queries.search_mode,
        queries.index_table,
        queries.index_version,
        queries.prompt_name,
        queries.prompt_version,
        doc_ranks.doc_rank,
        queries.query_id is not null as is_logged_query
    from feedback
    left join queries
        on feedback.query_id = queries.query_id
    left join doc_ranks
        on
            feedback.query_id = doc_ranks.query_id
            and feedback.doc_id = doc_ranks.doc_id

)

select * from final
