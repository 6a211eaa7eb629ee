with

products as (

    select * from {{ ref('stg_shop__products') }}

),

categories as (

    select * from {{ ref('product_categories') }}

),

transactions as (

    select * from {{ ref('transactions') }}

),

product_sales_summary as (

    select
        product_sku,
        sum(case when is_completed then quantity else 0 end) as units_sold,
        sum(recognized_revenue) as revenue,
        min(ordered_at) as first_sold_at,
        max(ordered_at) as last_sold_at
    from transactions
    group by 1

),

joined as (

    select
        products.*,
        categories.category_name,
        categories.department,
        coalesce(product_sales_summary.units_sold, 0) as units_sold,
        coalesce(product_sales_summary.revenue, 0) as revenue,
        product_sales_summary.first_sold_at,
        product_sales_summary.last_sold_at
    from products
    left join categories
        on products.category_key = categories.category_key
    left join product_sales_summary
        on products.product_sku = product_sales_summary.product_sku

),

final as (

    select
        cast(product_sku as {{ dbt.type_string() }}) as product_sku,
        cast(product_name as {{ dbt.type_string() }}) as product_name,
        cast(brand as {{ dbt.type_string() }}) as brand,
        cast(category_key as {{ dbt.type_string() }}) as category_key,
        cast(category_name as {{ dbt.type_string() }}) as category_name,
        cast(subcategory as {{ dbt.type_string() }}) as subcategory,
        cast(department as {{ dbt.type_string() }}) as department,
        cast(list_price as decimal(12, 2)) as list_price,
        cast(currency as {{ dbt.type_string() }}) as currency,
        product_status = 'active' as is_active,
        cast(launched_on as date) as launched_on,
        cast(units_sold as integer) as units_sold,
        cast(revenue as decimal(14, 2)) as revenue,
        cast(first_sold_at as timestamp) as first_sold_at,
        cast(last_sold_at as timestamp) as last_sold_at,
        cast(updated_at as timestamp) as updated_at
    from joined

)

select * from final
