#compdef lf

_lf_completion() {
  eval $(env _TYPER_COMPLETE_ARGS="${words[1,$CURRENT]}" _LF_COMPLETE=complete_zsh lf)
}

compdef _lf_completion lf
