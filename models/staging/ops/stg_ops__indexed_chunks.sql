with

source as (

    {{ ops_source('indexed_chunks') }}

),

renamed as (

    select
        chunk_id,
        doc_id,
        content_hash,
        metadata_hash,
        model_fingerprint,
        index_table,
        index_version,
        run_id as embed_run_id,
        source_updated_at,
        indexed_at
    from source

)

select * from renamed
