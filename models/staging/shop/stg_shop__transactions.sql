with

source as (

    select * from {{ source('shop', 'transactions') }}

),

renamed as (

    select

        ----------  ids
        trim(transaction_id) as transaction_id,
        trim(customer_id) as customer_id,
        upper(trim(product_sku)) as product_sku,

        ---------- numerics
        {{ dbt.safe_cast('trim(quantity)', dbt.type_int()) }} as quantity,
        {{ parse_money('unit_price') }} as unit_price,
        coalesce({{ parse_money('discount') }}, 0) as discount_amount,
        {{ parse_money('amount') }} as amount,
        upper(trim(currency)) as currency,

        ---------- text
        lower(trim(status)) as transaction_status,
        lower(trim(channel)) as sales_channel,

        ---------- timestamps
        {{ parse_timestamp('ordered_at') }} as ordered_at,
        {{ parse_timestamp('updated_at') }} as updated_at,

        ---------- load metadata
        _source_file,
        _source_line,
        _loaded_at

    from source

)

select * from renamed
