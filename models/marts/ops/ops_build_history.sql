-- Every recorded dbt invocation: what it ran and how it went, with its test pass rate.

with

invocations as (

    select * from {{ ref('stg_ops__dbt_invocations') }}

),

node_results as (

    select * from {{ ref('stg_ops__dbt_node_results') }}

),

per_invocation as (

    select
        invocation_id,
        count(*) filter (where resource_type = 'model') as models_run,
        count(*) filter (where resource_type = 'model' and status = 'error') as models_errored,
        count(*) filter (where resource_type in ('test', 'unit_test')) as tests_run,
        count(*) filter (where resource_type in ('test', 'unit_test') and status = 'pass') as tests_passed,
        count(*) filter (where resource_type in ('test', 'unit_test') and status = 'warn') as tests_warned,
        count(*) filter (where resource_type in ('test', 'unit_test') and status in ('fail', 'error')) as tests_failed,
        count(*) filter (where status = 'skipped') as nodes_skipped
    from node_results
    group by invocation_id

),

final as (

    select
        invocations.invocation_id,
        invocations.command,
        invocations.args,
        invocations.invocation_status,
        invocations.results_from,
        invocations.exit_code,
        invocations.started_at,
        invocations.elapsed_seconds,
        coalesce(per_invocation.models_run, 0) as models_run,
        coalesce(per_invocation.models_errored, 0) as models_errored,
        coalesce(per_invocation.tests_run, 0) as tests_run,
        coalesce(per_invocation.tests_passed, 0) as tests_passed,
        coalesce(per_invocation.tests_warned, 0) as tests_warned,
        coalesce(per_invocation.tests_failed, 0) as tests_failed,
        coalesce(per_invocation.nodes_skipped, 0) as nodes_skipped,
        per_invocation.tests_passed / nullif(per_invocation.tests_run, 0) as test_pass_rate
    from invocations
    left join per_invocation
        on invocations.invocation_id = per_invocation.invocation_id

)

select * from final
