-- The latest status of every model, seed, snapshot, test and source, failures first.

with

project_nodes as (

    {{ project_nodes() }}

),

node_results as (

    select * from {{ ref('stg_ops__dbt_node_results') }}

),

source_freshness as (

    select * from {{ ref('stg_ops__dbt_source_freshness') }}

),

results as (

    select
        unique_id,
        status,
        is_failure,
        is_warning,
        failures,
        message,
        tested_node,
        group_name,
        owner_name,
        owner_email,
        compiled_path,
        failing_rows_relation,
        failing_rows_sample,
        invocation_id,
        ran_at
    from node_results
    where resource_type <> 'operation'

    union all

    select
        unique_id,
        status,
        is_failure,
        is_warning,
        null as failures,
        coalesce(message, 'loaded ' || round(lag_hours, 1) || ' h ago') as message,
        null as tested_node,
        group_name,
        owner_name,
        owner_email,
        null as compiled_path,
        null as failing_rows_relation,
        null as failing_rows_sample,
        invocation_id,
        snapshotted_at as ran_at
    from source_freshness

),

latest as (

    select * from results
    qualify row_number() over (partition by unique_id order by ran_at desc, invocation_id desc) = 1

),

unit_tests as (

    -- unit tests are not in the graph's nodes: they are listed by their results
    select
        unique_id,
        'unit_test' as resource_type,
        node_name,
        original_file_path
    from node_results
    where resource_type = 'unit_test'
    qualify row_number() over (partition by unique_id order by ran_at desc) = 1

),

nodes as (

    select * from project_nodes
    union all
    select * from unit_tests

),

final as (

    select
        nodes.unique_id,
        nodes.resource_type,
        nodes.node_name,
        coalesce(latest.status, 'not_run') as status,
        coalesce(latest.is_failure, false) as is_failure,
        coalesce(latest.is_warning, false) as is_warning,
        case
            when latest.is_failure then 0
            when latest.is_warning then 1
            when latest.status = 'skipped' then 2
            when latest.unique_id is null then 3
            else 4
        end as status_rank,
        latest.failures,
        latest.message,
        latest.tested_node,
        latest.group_name,
        latest.owner_name,
        latest.owner_email,
        nodes.original_file_path,
        latest.compiled_path,
        latest.failing_rows_relation,
        latest.failing_rows_sample,
        latest.invocation_id as last_invocation_id,
        latest.ran_at as last_ran_at
    from nodes
    left join latest
        on nodes.unique_id = latest.unique_id

)

select * from final
order by status_rank, owner_name, resource_type, node_name
