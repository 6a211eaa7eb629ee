-- Each data and unit test over its last N runs (vars.ops.test_history_runs): fail rate and flakiness.

with

test_results as (

    select * from {{ ref('stg_ops__dbt_node_results') }}
    where
        resource_type in ('test', 'unit_test')
        and status in ('pass', 'fail', 'warn', 'error')

),

recent as (

    select
        *,
        status <> lag(status) over (partition by unique_id order by ran_at) as status_changed
    from test_results
    qualify
        row_number() over (partition by unique_id order by ran_at desc)
        <= {{ var('ops')['test_history_runs'] }}

),

final as (

    select
        unique_id,
        any_value(resource_type) as resource_type,
        arg_max(node_name, ran_at) as test_name,
        arg_max(tested_node, ran_at) as tested_node,
        arg_max(owner_name, ran_at) as owner_name,
        arg_max(owner_email, ran_at) as owner_email,
        count(*) as runs,
        count(*) filter (where status = 'pass') as passes,
        count(*) filter (where status = 'warn') as warnings,
        count(*) filter (where status in ('fail', 'error')) as failures,
        count(*) filter (where status <> 'pass') / count(*) as fail_rate,
        count(*) filter (where status_changed) as status_changes,
        -- flaky: it went both ways more than once in the window, not a single break or fix
        count(*) filter (where status_changed) >= {{ var('ops')['flaky_min_status_changes'] }} as is_flaky,
        arg_max(status, ran_at) as last_status,
        max(ran_at) as last_ran_at,
        max(ran_at) filter (where status <> 'pass') as last_failed_at
    from recent
    group by unique_id

)

select * from final
