-- The retrieval dataset at a glance: documents and chunks per type, with token sizes.
select
    documents.doc_type,
    count(distinct documents.doc_id) as documents,
    count(*) as chunks,
    round(avg(chunks.token_count)) as avg_tokens,
    max(chunks.token_count) as max_tokens
from {{ ref('documents') }} as documents
inner join {{ ref('document_chunks') }} as chunks
    on documents.doc_id = chunks.doc_id
group by 1
order by 3 desc
