with

customers as (

    select * from {{ ref('stg_shop__customers') }}

),

transactions as (

    select * from {{ ref('transactions') }}

),

customer_orders_summary as (

    select
        customer_id,
        sum(case when is_completed then 1 else 0 end) as number_of_orders,
        min(ordered_at) as first_ordered_at,
        max(ordered_at) as last_ordered_at,
        sum(recognized_revenue) as lifetime_spend,
        sum(case when is_refunded then amount else 0 end) as lifetime_refunds
    from transactions
    group by 1

),

joined as (

    select
        customers.*,
        coalesce(customer_orders_summary.number_of_orders, 0) as number_of_orders,
        customer_orders_summary.first_ordered_at,
        customer_orders_summary.last_ordered_at,
        coalesce(customer_orders_summary.lifetime_spend, 0) as lifetime_spend,
        coalesce(customer_orders_summary.lifetime_refunds, 0) as lifetime_refunds
    from customers
    left join customer_orders_summary
        on customers.customer_id = customer_orders_summary.customer_id

),

final as (

    select
        cast(customer_id as {{ dbt.type_string() }}) as customer_id,
        cast(first_name as {{ dbt.type_string() }}) as first_name,
        cast(last_name as {{ dbt.type_string() }}) as last_name,
        cast(email as {{ dbt.type_string() }}) as email,
        cast(phone_digits as {{ dbt.type_string() }}) as phone_digits,
        cast(city as {{ dbt.type_string() }}) as city,
        cast(state_code as {{ dbt.type_string() }}) as state_code,
        cast(country_code as {{ dbt.type_string() }}) as country_code,
        cast(customer_segment as {{ dbt.type_string() }}) as customer_segment,
        cast(signed_up_on as date) as signed_up_on,
        cast(number_of_orders as integer) as number_of_orders,
        cast(first_ordered_at as timestamp) as first_ordered_at,
        cast(last_ordered_at as timestamp) as last_ordered_at,
        cast(lifetime_spend as decimal(14, 2)) as lifetime_spend,
        cast(lifetime_refunds as decimal(14, 2)) as lifetime_refunds,
        cast(
            case
                when number_of_orders > 1 then 'returning'
                when number_of_orders = 1 then 'new'
                else 'prospect'
            end as {{ dbt.type_string() }}
        ) as customer_type,
        cast(updated_at as timestamp) as updated_at
    from joined

)

select * from final
