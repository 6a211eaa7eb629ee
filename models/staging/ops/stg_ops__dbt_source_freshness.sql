with

source as (

    {{ ops_source('dbt_source_freshness') }}

),

renamed as (

    select
        invocation_id,
        unique_id,
        source_name,
        table_name,
        source_name || '.' || table_name as source_table,
        status,
        status in ('error', 'runtime error') as is_failure,
        status = 'warn' as is_warning,
        message,
        group_name,
        owner_name,
        owner_email,
        lag_seconds / 3600.0 as lag_hours,
        warn_after_seconds / 3600.0 as warn_after_hours,
        error_after_seconds / 3600.0 as error_after_hours,
        max_loaded_at,
        snapshotted_at
    from source

)

select * from renamed
