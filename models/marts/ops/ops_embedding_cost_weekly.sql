-- Embedding spend per week against the budget (vars.ops.weekly_budget_usd).

with

run_costs as (

    select * from {{ ref('ops_embedding_cost') }}

),

weekly as (

    select
        cost_week,
        count(*) as runs,
        sum(tokens_embedded) as tokens_embedded,
        sum(tokens_reused) as tokens_reused,
        sum(tokens_reused) / nullif(sum(tokens_embedded) + sum(tokens_reused), 0) as token_reuse_rate,
        sum(estimated_cost_usd) as estimated_cost_usd,
        sum(avoided_cost_usd) as avoided_cost_usd
    from run_costs
    group by cost_week

),

final as (

    select
        *,
        {{ var('ops')['weekly_budget_usd'] }} as budget_usd,
        estimated_cost_usd / nullif({{ var('ops')['weekly_budget_usd'] }}, 0) as budget_used,
        coalesce(estimated_cost_usd > {{ var('ops')['weekly_budget_usd'] }}, false) as is_over_budget
    from weekly

)

select * from final
