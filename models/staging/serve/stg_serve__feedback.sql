with

source as (

    {{ serve_source('feedback') }}

),

renamed as (

    select
        -- ids
        feedback_id,
        query_id,
        doc_id,
        chunk_id,
        caller as caller_name,

        -- the feedback
        label as feedback_label,
        comment as comment_text,

        -- timestamps
        logged_at as given_at

    from source

)

select * from renamed
