{#
    Use a model's custom schema as-is (staging, core, ...) instead of dbt's default
    <target_schema>_<custom>, so the warehouse reads like the folder tree.
#}
{% macro generate_schema_name(custom_schema_name, node) -%}
    {%- if custom_schema_name is none -%}
        {{ target.schema }}
    {%- else -%}
        {{ custom_schema_name | trim }}
    {%- endif -%}
{%- endmacro %}
