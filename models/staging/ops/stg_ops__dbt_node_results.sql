with

source as (

    {{ ops_source('dbt_node_results') }}

),

invocations as (

    select * from {{ ref('stg_ops__dbt_invocations') }}

),

renamed as (

    select
        source.invocation_id,
        source.unique_id,
        source.resource_type,
        source.node_name,
        source.status,
        -- error-level: what stops a pipeline; a test at severity warn reports `warn` instead
        source.status in ('fail', 'error', 'runtime error') as is_failure,
        source.status = 'warn' as is_warning,
        source.severity,
        source.failures,
        source.rows_affected,
        source.execution_seconds,
        source.message,
        source.tested_node,
        source.group_name,
        source.owner_name,
        source.owner_email,
        source.original_file_path,
        source.compiled_path,
        source.failing_rows_relation,
        source.failing_rows_sample,
        invocations.command,
        -- nodes skipped before they started have no timing: they ran, or not, with their invocation
        coalesce(source.completed_at, source.started_at, invocations.finished_at) as ran_at
    from source
    left join invocations
        on source.invocation_id = invocations.invocation_id

)

select * from renamed
