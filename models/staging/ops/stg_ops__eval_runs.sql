with

source as (

    {{ ops_source('eval_runs') }}

),

renamed as (

    select
        run_id as eval_run_id,
        status as run_status,
        dataset,
        questions_evaluated,
        index_version,
        model_name,
        git_commit,
        baseline_run_id,
        gates_checked,
        gate_failures,
        gate_report,
        started_at,
        finished_at
    from source

)

select * from renamed
