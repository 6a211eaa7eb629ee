with

source as (

    select * from {{ source('docs', 'documents') }}

),

renamed as (

    select

        ----------  ids
        trim(doc_id) as doc_id,
        nullif(upper(trim(product_sku)), '') as product_sku,

        ---------- text
        trim(title) as title,
        lower(trim(doc_type)) as doc_type,
        lower(trim(owner)) as owner_team,
        lower(trim(access_level)) as access_level,
        front_matter,
        body,

        ---------- timestamps
        {{ parse_timestamp("replace(updated_at, '+00:00', '')") }} as updated_at,

        ---------- load metadata
        _source_file,
        _record_hash as content_hash,
        _loaded_at

    from source

)

select * from renamed
