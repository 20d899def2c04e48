/* cli.h - the `tessera` command's subcommands. Each takes argc/argv after the
 * subcommand name's position (argv[0] is the subcommand) and returns an exit status. */
#ifndef TS_CLI_H
#define TS_CLI_H

#define TESSERA_VERSION "0.1.0"

int cmd_generate(int argc, char **argv);
int cmd_serve(int argc, char **argv);

#endif
