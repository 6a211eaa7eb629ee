with

source as (

    {{ ops_source('dbt_invocations') }}

),

renamed as (

    select
        invocation_id,
        command,
        args,
        status as invocation_status,
        results_from,
        exit_code,
        dbt_version,
        nodes_total,
        nodes_failed,
        nodes_warned,
        nodes_skipped,
        elapsed_seconds,
        started_at,
        finished_at
    from source

)

select * from renamed
