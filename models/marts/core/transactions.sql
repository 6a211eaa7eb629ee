with

transactions as (

    select * from {{ ref('stg_shop__transactions') }}

),

products as (

    select * from {{ ref('stg_shop__products') }}

),

customers as (

    -- Also makes this mart wait for the relationships test between staged transactions
    -- and customers: dbt build blocks a model only on tests of all the parents it has.
    select * from {{ ref('stg_shop__customers') }}

),

transactions_enriched as (

    select
        transactions.*,
        products.category_key,
        customers.customer_segment
    from transactions
    left join products
        on transactions.product_sku = products.product_sku
    left join customers
        on transactions.customer_id = customers.customer_id

),

final as (

    select
        cast(transaction_id as {{ dbt.type_string() }}) as transaction_id,
        cast(customer_id as {{ dbt.type_string() }}) as customer_id,
        cast(product_sku as {{ dbt.type_string() }}) as product_sku,
        cast(category_key as {{ dbt.type_string() }}) as category_key,
        cast(customer_segment as {{ dbt.type_string() }}) as customer_segment,
        cast(quantity as integer) as quantity,
        cast(unit_price as decimal(12, 2)) as unit_price,
        cast(quantity * unit_price as decimal(12, 2)) as gross_amount,
        cast(discount_amount as decimal(12, 2)) as discount_amount,
        cast(amount as decimal(12, 2)) as amount,
        cast(currency as {{ dbt.type_string() }}) as currency,
        cast(transaction_status as {{ dbt.type_string() }}) as transaction_status,
        cast(sales_channel as {{ dbt.type_string() }}) as sales_channel,
        transaction_status = 'completed' as is_completed,
        transaction_status = 'refunded' as is_refunded,
        cast(case when transaction_status = 'completed' then amount else 0 end as decimal(12, 2))
            as recognized_revenue,
        cast(ordered_at as timestamp) as ordered_at,
        cast(ordered_at as date) as ordered_on,
        cast(updated_at as timestamp) as updated_at
    from transactions_enriched

)

select * from final
