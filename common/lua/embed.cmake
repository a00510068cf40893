# embed.cmake - turns each common/lua/<name>.lua into a C string
# `const char sheaf_lua_<name>[]` in one generated file, so the scripts are
# kept, read and reviewed as Lua while the programs carry them built in.
#   cmake -DOUT=lua_scripts.c -P embed.cmake a.lua b.lua ...
set(body "/* Generated from the .lua files of common/lua by common/lua/embed.cmake: do not edit. */\n")
math(EXPR last "${CMAKE_ARGC} - 1")
foreach(i RANGE 4 ${last})
  set(f "${CMAKE_ARGV${i}}")
  if(NOT f MATCHES "\\.lua$")
    continue()
  endif()
  get_filename_component(name "${f}" NAME_WE)
  file(READ "${f}" lua)
  string(REPLACE "\\" "\\\\" lua "${lua}")
  string(REPLACE "\"" "\\\"" lua "${lua}")
  string(REPLACE "\n" "\\n\"\n    \"" lua "${lua}")
  string(APPEND body "const char sheaf_lua_${name}[] =\n    \"${lua}\";\n")
endforeach()
file(WRITE "${OUT}.tmp" "${body}")
file(COPY_FILE "${OUT}.tmp" "${OUT}" ONLY_IF_DIFFERENT)
