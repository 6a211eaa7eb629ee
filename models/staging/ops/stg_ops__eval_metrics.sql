with

source as (

    {{ ops_source('eval_metrics') }}

),

renamed as (

    select
        run_id as eval_run_id,
        dataset,
        mode,
        category,
        metric,
        k,
        metric || '@' || k as metric_key,
        value as metric_value,
        questions
    from source

)

select * from renamed
