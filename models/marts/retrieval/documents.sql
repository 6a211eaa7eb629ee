with

documents as (

    select * from {{ ref('stg_docs__documents') }}

),

normalized as (

    select * from {{ ref('int_documents_normalized') }}

),

products as (

    select * from {{ ref('products') }}

),

final as (

    select
        documents.doc_id,
        documents.title,
        documents.doc_type,
        documents.product_sku,
        products.product_name,
        products.category_name as category,
        -- `owner` is a keyword in some dialects, but it is the name every consumer filters on.
        documents.owner_team as owner,  -- noqa: RF04
        documents.access_level,
        normalized.body,
        normalized.word_count,
        normalized.token_count,
        documents.front_matter,
        documents.updated_at,
        documents.content_hash,
        documents._source_file as source_file,
        documents._loaded_at as loaded_at
    from documents
    inner join normalized
        on documents.doc_id = normalized.doc_id
    left join products
        on documents.product_sku = products.product_sku

)

select * from final
