with

source as (

    {{ ops_source('freshness_events') }}

),

renamed as (

    select
        -- ids
        event_id,
        path as landing_path,
        source as raw_table,
        doc_id,
        run_id,

        -- what changed, and who landed it
        change as change_kind,
        file_hash,
        first_load as is_first_load,
        runner,
        outcome,
        detail,
        index_version,

        -- timestamps
        modified_at,
        seen_at,
        ingested_at,
        built_at,
        embedded_at,
        published_at,
        recorded_at,
        -- a removal has no modification time: it counts from when it was seen
        coalesce(modified_at, seen_at) as changed_at
    from source

)

select * from renamed
