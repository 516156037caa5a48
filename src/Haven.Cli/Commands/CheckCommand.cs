using System.CommandLine;
using System.Text.Json.Nodes;
using Haven.Cli.Infrastructure;
using Haven.Core;
using Haven.Repository;

namespace Haven.Cli.Commands;

public static class CheckCommand
{
    public static Command Build()
    {
        var readData = new Option<bool>("--read-data") { Description = "Also read every pack and verify every blob" };
        var subset = new Option<string?>("--read-data-subset") { Description = "Read only part of the data: n/m (one of m groups) or p% (random)" };
        var command = new Command("check", "Verify the repository's structure and, optionally, its data") { readData, subset };
        command.Description += """


            Exit codes: 0 no errors; 14 damage found (each damaged file is named).

            Examples:
              haven check
              haven check --read-data
              haven check --read-data-subset 1/7     (a different seventh each day of the week)
            """;
        Runner.SetHandler(command, async (ctx, ct) =>
        {
            await using var repo = await ctx.OpenRepositoryAsync(loadIndex: false, ct, useCache: false);
            await using var repoLock = await ctx.LockAsync(repo, exclusive: false, "check", ct);
            var sub = ctx.Parse.GetValue(subset);
            var checker = new Checker(repo, new CheckOptions { ReadData = ctx.Parse.GetValue(readData) || sub is not null, ReadDataSubset = sub })
            {
                OnPhase = phase => ctx.Output.Info(phase),
            };
            var result = await checker.RunAsync(ct);
            foreach (var problem in result.Problems)
            {
                if (problem.IsError)
                {
                    Console.Error.WriteLine($"error: {problem.Object}: {problem.Message}");
                }
                else
                {
                    ctx.Output.Info($"note: {problem.Object}: {problem.Message}");
                }
            }

            int errors = result.Problems.Count(p => p.IsError);
            ctx.Output.Line($"checked {result.Snapshots} snapshot(s), {result.Trees} tree(s), {result.Packs} pack(s)"
                + (result.PacksRead > 0 ? $"; read {result.PacksRead} pack(s) with {Units.Count(result.BlobsRead)} blob(s)" : ""));
            ctx.Output.Line(errors == 0 ? "no errors were found" : $"{errors} error(s) found");
            ctx.Output.JsonResult(new JsonObject
            {
                ["snapshots"] = result.Snapshots,
                ["trees"] = result.Trees,
                ["packs"] = result.Packs,
                ["packs_read"] = result.PacksRead,
                ["blobs_read"] = result.BlobsRead,
                ["errors"] = errors,
                ["problems"] = new JsonArray(result.Problems.Select(p => (JsonNode)new JsonObject { ["object"] = p.Object, ["message"] = p.Message, ["error"] = p.IsError }).ToArray()),
            });
            return errors == 0 ? ExitCodes.Success : ExitCodes.Corrupt;
        });
        return command;
    }
}
