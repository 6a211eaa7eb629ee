{#
    Cleaning helpers used by staging models. Each dispatches on the adapter so a port to
    another warehouse overrides one macro instead of editing every model.
#}

{#
    Currency written as text ("$1,299.00", "USD 89.50", "1299", "1.2e3") to a decimal amount.
    Only a currency code or symbol, thousands separators and spaces are removed: what is left
    must be a number (an exponent included), or the amount is null and its not_null test fails.
    A value too large for decimal(12, 2), such as 1e21, is null too, never a truncated number.
#}
{% macro parse_money(column) -%}
    {{ return(adapter.dispatch('parse_money')(column)) }}
{%- endmacro %}

{% macro default__parse_money(column) -%}
    {{ dbt.safe_cast("nullif(" ~ replace_pattern("trim(" ~ column ~ ")", "^[A-Z]{3} *| *[A-Z]{3}$|[$€£, ]", "") ~ ", '')", "decimal(12, 2)") }}
{%- endmacro %}

{% macro duckdb__parse_money(column) -%}
    try_cast(nullif(regexp_replace(trim({{ column }}), '^[A-Z]{3}\s*|\s*[A-Z]{3}$|[$€£,\s]', '', 'g'), '') as decimal(12, 2))
{%- endmacro %}


{# Exports write "2025-03-04 10:22:13" or "2025-03-04T10:22:13Z"; both are UTC. #}
{% macro parse_timestamp(column) -%}
    {{ return(adapter.dispatch('parse_timestamp')(column)) }}
{%- endmacro %}

{% macro default__parse_timestamp(column) -%}
    {{ dbt.safe_cast("replace(replace(trim(" ~ column ~ "), 'T', ' '), 'Z', '')", dbt.type_timestamp()) }}
{%- endmacro %}

{% macro duckdb__parse_timestamp(column) -%}
    try_cast(replace(replace(trim({{ column }}), 'T', ' '), 'Z', '') as timestamp)
{%- endmacro %}


{# Trim, and turn names shouted in capitals ("CONNOR") into "Connor". #}
{% macro clean_name(column) -%}
    {{ return(adapter.dispatch('clean_name')(column)) }}
{%- endmacro %}

{% macro default__clean_name(column) -%}
    case
        when upper(trim({{ column }})) = trim({{ column }}) and length(trim({{ column }})) > 1
            then upper(substring(trim({{ column }}), 1, 1)) || lower(substring(trim({{ column }}), 2))
        else trim({{ column }})
    end
{%- endmacro %}


{# Keep the digits of a phone number, dropping a leading US country code. #}
{% macro digits_only(column) -%}
    {{ return(adapter.dispatch('digits_only')(column)) }}
{%- endmacro %}

{% macro default__digits_only(column) -%}
    nullif({{ replace_pattern(column, '[^0-9]', '') }}, '')
{%- endmacro %}

{% macro duckdb__digits_only(column) -%}
    nullif(regexp_replace({{ column }}, '[^0-9]', '', 'g'), '')
{%- endmacro %}


{#
    Every match of a regular expression replaced. DuckDB and Postgres replace the first match unless
    given the 'g' flag; Snowflake, BigQuery and Databricks replace every match and take no flags.
    `pattern` and `replacement` are SQL string contents (quotes doubled by the caller).
#}
{% macro replace_pattern(column, pattern, replacement) -%}
    {{ return(adapter.dispatch('replace_pattern')(column, pattern, replacement)) }}
{%- endmacro %}

{% macro default__replace_pattern(column, pattern, replacement) -%}
    regexp_replace({{ column }}, '{{ pattern }}', '{{ replacement }}')
{%- endmacro %}

{% macro duckdb__replace_pattern(column, pattern, replacement) -%}
    regexp_replace({{ column }}, '{{ pattern }}', '{{ replacement }}', 'g')
{%- endmacro %}

{% macro postgres__replace_pattern(column, pattern, replacement) -%}
    regexp_replace({{ column }}, '{{ pattern }}', '{{ replacement }}', 'g')
{%- endmacro %}


{# True where the text matches a regular expression (RE2 syntax). #}
{% macro matches_pattern(column, pattern) -%}
    {{ return(adapter.dispatch('matches_pattern')(column, pattern)) }}
{%- endmacro %}

{% macro default__matches_pattern(column, pattern) -%}
    regexp_like({{ column }}, '{{ pattern }}')
{%- endmacro %}

{% macro duckdb__matches_pattern(column, pattern) -%}
    regexp_matches({{ column }}, '{{ pattern }}')
{%- endmacro %}
