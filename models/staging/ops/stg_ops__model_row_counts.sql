with

source as (

    select * from {{ source('audit', 'model_row_counts') }}

),

renamed as (

    select
        invocation_id,
        model_name,
        relation_name,
        row_count,
        recorded_at
    from source

)

select * from renamed
