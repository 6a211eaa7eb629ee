with

source as (

    select * from {{ source('shop', 'customers') }}

),

renamed as (

    select

        ----------  ids
        trim(customer_id) as customer_id,

        ---------- text
        {{ clean_name('first_name') }} as first_name,
        {{ clean_name('last_name') }} as last_name,
        lower(trim(email)) as email,
        {{ digits_only('phone') }} as phone_digits,
        trim(city) as city,
        upper(trim(state)) as state_code,
        upper(trim(country_code)) as country_code,
        lower(trim(segment)) as customer_segment,

        ---------- timestamps
        {{ dbt.safe_cast('trim(signup_date)', 'date') }} as signed_up_on,
        {{ parse_timestamp('updated_at') }} as updated_at,

        ---------- load metadata
        _source_file,
        _source_line,
        _loaded_at

    from source

)

select * from renamed
