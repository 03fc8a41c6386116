# embed_lua(<target-header> <lua-file> <symbol>): generate a header holding the bytes of a
# Lua file as `static const unsigned char <symbol>[]` and `<symbol>_len`, rebuilt when the
# file changes. Used by plugins/net and plugins/volume for their Lua halves.
function(embed_lua header luafile symbol)
  add_custom_command(
    OUTPUT ${header}
    COMMAND ${CMAKE_COMMAND} -DIN=${luafile} -DOUT=${header} -DSYM=${symbol}
            -P ${CMAKE_CURRENT_FUNCTION_LIST_DIR}/embed_run.cmake
    DEPENDS ${luafile} ${CMAKE_CURRENT_FUNCTION_LIST_DIR}/embed_run.cmake
    VERBATIM)
endfunction()
