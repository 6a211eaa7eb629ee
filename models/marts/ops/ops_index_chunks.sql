-- Every chunk against what the published index holds: current, stale, not yet indexed, or
-- deleted but still served. Lag is measured from the document's updated_at to indexed_at.

with

chunks as (

    select * from {{ ref('document_chunks') }}

),

documents as (

    select * from {{ ref('documents') }}

),

indexed as (

    select * from {{ ref('stg_ops__indexed_chunks') }}

),

joined as (

    select
        coalesce(chunks.chunk_id, indexed.chunk_id) as chunk_id,
        coalesce(chunks.doc_id, indexed.doc_id) as doc_id,
        case
            when chunks.chunk_id is null then 'deleted_pending'
            when indexed.chunk_id is null then 'not_indexed'
            when indexed.content_hash <> chunks.content_hash then 'stale'
            -- same text, but the document changed since: its metadata in the index is old
            when
                coalesce(indexed.source_updated_at, timestamp '1970-01-01')
                <> coalesce(chunks.source_updated_at, timestamp '1970-01-01')
                then 'stale'
            else 'current'
        end as index_state,
        chunks.source_updated_at,
        documents.loaded_at,
        indexed.indexed_at,
        indexed.index_table,
        indexed.index_version
    from chunks
    left join documents
        on chunks.doc_id = documents.doc_id
    full outer join indexed
        on chunks.chunk_id = indexed.chunk_id

),

final as (

    select
        chunk_id,
        doc_id,
        index_state,
        index_state <> 'current' as is_pending,
        source_updated_at,
        loaded_at,
        indexed_at,
        case
            when index_state = 'current'
                then (epoch(indexed_at) - epoch(source_updated_at)) / 3600.0
        end as source_to_index_hours,
        -- how long a change has been waiting since it landed
        case
            when index_state in ('not_indexed', 'stale')
                then (epoch({{ dbt.current_timestamp() }}) - epoch(loaded_at)) / 3600.0
        end as pending_hours,
        index_table,
        index_version
    from joined

)

select * from final
