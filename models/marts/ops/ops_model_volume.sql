-- Rows in every table a build made, per build, with the change from the build before.

with

row_counts as (

    select * from {{ ref('stg_ops__model_row_counts') }}

),

final as (

    select
        invocation_id,
        model_name,
        relation_name,
        row_count,
        lag(row_count) over (partition by model_name order by recorded_at) as previous_row_count,
        row_count - previous_row_count as row_change,
        row_change / nullif(previous_row_count, 0) as row_change_pct,
        recorded_at
    from row_counts
    -- a hook that ran twice in one invocation counted the same build twice
    qualify row_number() over (partition by invocation_id, model_name order by recorded_at desc) = 1

)

select * from final
