with

source as (

    select * from {{ source('shop', 'products') }}

),

renamed as (

    select

        ----------  ids
        upper(trim(sku)) as product_sku,

        ---------- text
        trim(name) as product_name,
        trim(brand) as brand,
        lower(trim(category)) as category_key,
        trim(subcategory) as subcategory,
        lower(trim(status)) as product_status,

        ---------- numerics
        {{ parse_money('list_price') }} as list_price,
        upper(trim(currency)) as currency,

        ---------- timestamps
        {{ dbt.safe_cast('trim(launched_on)', 'date') }} as launched_on,
        {{ parse_timestamp('updated_at') }} as updated_at,

        ---------- load metadata
        _source_file,
        _source_line,
        _loaded_at

    from source

)

select * from renamed
