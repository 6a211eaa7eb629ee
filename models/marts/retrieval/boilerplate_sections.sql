with

sections as (

    select * from {{ ref('document_sections') }}

),

settings as (

    select * from {{ ref('chunking_settings') }}

),

counted as (

    select
        text_hash,
        count(distinct doc_id) as document_count,
        -- one heading it appears under, for a reader (the text may appear under several)
        min(section_key) as section_key
    from sections
    where text_hash is not null
    group by text_hash

),

final as (

    select
        counted.text_hash,
        counted.document_count,
        counted.section_key
    from counted
    cross join settings
    where
        settings.boilerplate_min_docs > 0
        and counted.document_count >= settings.boilerplate_min_docs

)

select * from final
