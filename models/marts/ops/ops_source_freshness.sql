-- Every freshness check of every source table against its SLAs; is_latest marks the current state.

with

checks as (

    select * from {{ ref('stg_ops__dbt_source_freshness') }}

),

final as (

    select
        invocation_id,
        unique_id,
        source_table,
        status,
        case
            when status = 'pass' then 'within_sla'
            when status = 'warn' then 'past_warn_sla'
            when status = 'error' then 'past_error_sla'
            else 'check_failed'
        end as sla_state,
        is_failure,
        is_warning,
        lag_hours,
        warn_after_hours,
        error_after_hours,
        lag_hours / nullif(error_after_hours, 0) as error_sla_used,
        max_loaded_at,
        snapshotted_at as checked_at,
        message,
        group_name,
        owner_name,
        owner_email,
        row_number() over (partition by unique_id order by snapshotted_at desc) = 1 as is_latest
    from checks

)

select * from final
