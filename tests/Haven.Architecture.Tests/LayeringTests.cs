using System.Reflection;
using System.Xml.Linq;
using Xunit;

namespace Haven.Architecture.Tests;

/// <summary>
/// Layers point one way (ARCHITECTURE.md): engine ← storage backends ← files/images ← client/protocol ← server,
/// agent, dock, CLI. Each project may reference only the projects listed for it here; a new project must be added
/// to the table, which makes its place in the layering a reviewed decision.
/// </summary>
public class LayeringTests
{
    private static readonly Dictionary<string, string[]> Allowed = new()
    {
        ["Haven.Core"] = [],
        ["Haven.Storage"] = ["Haven.Core"],
        ["Haven.Storage.S3"] = ["Haven.Storage"],
        ["Haven.Repository"] = ["Haven.Storage"],
        ["Haven.Files"] = ["Haven.Repository"],
        ["Haven.Images"] = ["Haven.Repository"],
        ["Haven.Testing"] = ["Haven.Files"],
        ["Haven.Protocol"] = ["Haven.Storage"],
        ["Haven.Agent"] = ["Haven.Protocol", "Haven.Files", "Haven.Images"],
        ["Haven.Server"] = ["Haven.Protocol", "Haven.Storage.S3", "Haven.Repository"], // the engine, for its own maintenance (forget, prune)
        ["Haven.Cli"] = ["Haven.Files", "Haven.Images", "Haven.Storage.S3", "Haven.Server", "Haven.Agent"],
    };

    /// <summary>Projects that may declare ASP.NET Core: the network roles that serve HTTP (the CLI gets it through them).</summary>
    private static readonly string[] AspNetAllowed = ["Haven.Server", "Haven.Dock"];

    private static string RepositoryRoot()
    {
        var dir = new DirectoryInfo(AppContext.BaseDirectory);
        while (dir is not null && !File.Exists(Path.Combine(dir.FullName, "Haven.slnx")))
        {
            dir = dir.Parent;
        }

        return dir?.FullName ?? throw new InvalidOperationException("Haven.slnx not found above " + AppContext.BaseDirectory);
    }

    private static IEnumerable<(string Name, XDocument Project)> SourceProjects() =>
        Directory.GetFiles(Path.Combine(RepositoryRoot(), "src"), "*.csproj", SearchOption.AllDirectories)
            .Select(p => (Path.GetFileNameWithoutExtension(p), XDocument.Load(p)));

    [Fact]
    public void EveryProjectIsInTheLayeringTable()
    {
        var unknown = SourceProjects().Select(p => p.Name).Where(n => !Allowed.ContainsKey(n)).ToList();
        Assert.True(unknown.Count == 0, $"add these projects to LayeringTests.Allowed: {string.Join(", ", unknown)}");
    }

    [Fact]
    public void ProjectReferencesPointDownwardOnly()
    {
        var violations = new List<string>();
        foreach (var (name, project) in SourceProjects())
        {
            var references = project.Descendants("ProjectReference")
                .Select(r => Path.GetFileNameWithoutExtension(r.Attribute("Include")!.Value.Replace('\\', '/')));
            foreach (var reference in references)
            {
                if (!Allowed.TryGetValue(name, out var allowed) || !allowed.Contains(reference))
                {
                    violations.Add($"{name} -> {reference}");
                }
            }
        }

        Assert.True(violations.Count == 0, "references against the layering: " + string.Join("; ", violations));
    }

    [Fact]
    public void CompiledAssembliesReferenceOnlyLowerLayers()
    {
        // The transitive closure of the table: what each assembly may load.
        HashSet<string> Closure(string name)
        {
            var result = new HashSet<string>();
            var stack = new Stack<string>(Allowed[name]);
            while (stack.Count > 0)
            {
                var n = stack.Pop();
                if (result.Add(n))
                {
                    foreach (var m in Allowed[n])
                    {
                        stack.Push(m);
                    }
                }
            }

            return result;
        }

        var violations = new List<string>();
        foreach (var name in new[] { "Haven.Core", "Haven.Storage", "Haven.Storage.S3", "Haven.Repository", "Haven.Files", "Haven.Protocol", "Haven.Agent" })
        {
            var assembly = Assembly.Load(name);
            var closure = Closure(name);
            foreach (var reference in assembly.GetReferencedAssemblies().Select(a => a.Name!))
            {
                if (reference.StartsWith("Haven.", StringComparison.Ordinal) && !closure.Contains(reference))
                {
                    violations.Add($"{name} -> {reference}");
                }

                if (reference.StartsWith("Microsoft.AspNetCore", StringComparison.Ordinal) && !AspNetAllowed.Contains(name))
                {
                    violations.Add($"{name} -> {reference} (the engine builds without ASP.NET)");
                }
            }
        }

        Assert.True(violations.Count == 0, string.Join("; ", violations));
    }

    [Fact]
    public void TheEngineDoesNotUseTheAspNetFramework()
    {
        foreach (var (name, project) in SourceProjects().Where(p => !AspNetAllowed.Contains(p.Name)))
        {
            var sdk = project.Root!.Attribute("Sdk")?.Value ?? "";
            Assert.False(sdk.Contains("Web", StringComparison.Ordinal), $"{name} uses {sdk}");
            Assert.DoesNotContain(project.Descendants("FrameworkReference"), r => r.Attribute("Include")?.Value == "Microsoft.AspNetCore.App");
        }
    }

    [Fact]
    public void TheExecutableIsNamedHaven()
    {
        var cli = SourceProjects().Single(p => p.Name == "Haven.Cli").Project;
        Assert.Equal("haven", cli.Descendants("AssemblyName").Single().Value);
    }
}
