with

source as (

    {{ serve_source('api_keys') }}

),

renamed as (

    select
        -- ids
        name as key_name,

        -- what the key may do
        access_level,
        rate_per_second,
        daily_tokens,

        -- timestamps
        created_at,
        revoked_at

    from source

)

select * from renamed
