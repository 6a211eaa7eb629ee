-- Feedback turned into candidate relevance judgments: one row per question (as people typed it,
-- normalized) and document someone labelled for it. A vote is one request's latest explicit label
-- (relevant or not_relevant) on the document, so a caller who labels the same answer twice counts
-- once; clicks are counted beside the votes, never as one. `rp eval promote-feedback` writes the
-- candidates with enough votes into the judged set `make eval` reads (docs/evaluation.md).
-- Access levels rank public < internal < confidential (python_jobs/search/filters.py).

with

queries as (

    select * from {{ ref('ops_queries') }}
    where outcome = 'ok'

),

feedback as (

    select * from {{ ref('ops_feedback') }}

),

documents as (

    select * from {{ ref('documents') }}

),

labelled as (

    select
        feedback.feedback_id,
        feedback.query_id,
        feedback.doc_id,
        feedback.caller_name,
        feedback.feedback_label,
        feedback.given_at,
        queries.question_key,
        queries.prompt_name,
        queries.prompt_version,
        case queries.caller_access_level
            when 'public' then 0
            when 'internal' then 1
            when 'confidential' then 2
        end as access_rank
    from feedback
    inner join queries
        on feedback.query_id = queries.query_id

),

votes as (

    -- one vote per request and document: its latest explicit label
    select * from labelled
    where feedback_label in ('relevant', 'not_relevant')
    qualify row_number() over (
        partition by query_id, doc_id
        order by given_at desc, feedback_id desc
    ) = 1

),

tallied as (

    select
        labelled.question_key,
        labelled.doc_id,
        count(distinct votes.query_id) filter (where votes.feedback_label = 'relevant') as votes_for,
        count(distinct votes.query_id) filter (where votes.feedback_label = 'not_relevant') as votes_against,
        count(distinct labelled.query_id) filter (where labelled.feedback_label = 'click') as clicks,
        count(distinct labelled.caller_name) as callers,
        -- asked as the most trusted caller who labelled it: the document was visible to that caller
        max(labelled.access_rank) as asker_access_rank,
        string_agg(
            distinct labelled.prompt_name || '@' || labelled.prompt_version, ', '
            order by labelled.prompt_name || '@' || labelled.prompt_version
        ) as prompt_versions,
        min(labelled.given_at) as first_seen_at,
        max(labelled.given_at) as last_seen_at
    from labelled
    left join votes
        on labelled.feedback_id = votes.feedback_id
    group by labelled.question_key, labelled.doc_id

),

askings as (

    -- the question's latest wording, and how often it was asked
    select
        question_key,
        count(*) as times_asked,
        arg_max(query_text, logged_at) as question
    from queries
    group by question_key

),

final as (

    select
        {{ dbt.hash("tallied.question_key || '|' || tallied.doc_id") }} as candidate_id,
        'fb-' || left({{ dbt.hash('tallied.question_key') }}, 12) as question_id,
        askings.question,
        askings.times_asked,
        tallied.doc_id,
        documents.title as doc_title,
        documents.access_level as doc_access_level,
        case tallied.asker_access_rank
            when 0 then 'public'
            when 1 then 'internal'
            when 2 then 'confidential'
        end as asker_access_level,
        tallied.votes_for,
        tallied.votes_against,
        tallied.clicks,
        tallied.callers,
        case
            when tallied.votes_for > tallied.votes_against and tallied.votes_against = 0 then 2
            when tallied.votes_for > tallied.votes_against then 1
            else 0
        end as proposed_relevance,
        documents.doc_id is not null as is_document_current,
        tallied.prompt_versions,
        tallied.first_seen_at,
        tallied.last_seen_at
    from tallied
    inner join askings
        on tallied.question_key = askings.question_key
    left join documents
        on tallied.doc_id = documents.doc_id

)

select * from final
